"""LEGOLAS Dagster layer: assets, resources, checks and sensors over ``legolas_ml``."""
