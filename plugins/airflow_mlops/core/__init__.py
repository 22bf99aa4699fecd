"""The logic of each step as plain functions and dataclasses: no Airflow import, callable from a test or a notebook."""
