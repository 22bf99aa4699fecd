"""Developer tooling of airflow-mlops (the ``airflow-mlops-dev`` distribution), kept out of the provider.

* ``demo``: ``python -m airflow_mlops_dev.demo --usecase examples/<name>``, the whole loop replayed on the embedded
  Airflow (``replay_loop`` drives it, ``replay_report`` writes its report);
* ``replay``: land one period of a use case's demo data (``replay_source``) in its lake's landing zone;
* ``traffic``: live requests to a use case's endpoint from a file of rows;
* ``devstack``: the native Airflow of both profiles (``up``/``down``/``status``);
* ``serving``: the embedded serving processes from the command line (``up``/``down``/``status``).

Everything here imports the provider (``airflow_mlops``); the provider never imports this package.
"""
