"""Running the platform: what each DAG task calls (orchestration.py), the Airflow runner and the main job, the
end-of-run summary, `status`, failure notifications, the web UI, re-runs and the production-like cluster.

May import every room below it; only the command line (`pophealth.cli`) imports it.
"""
