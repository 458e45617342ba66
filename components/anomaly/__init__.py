"""Anomaly detection without defect labels: models fitted on good images only."""
