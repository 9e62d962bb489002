"""The file MLflow runs to build a served LEGOLAS model ("models from code", ``scoring/pyfunc.py``).

MLflow copies this file into every model it saves and executes it on load: the model is code by
reference, never an unpickled object. Nothing imports it.
"""

import mlflow

from legolas_ml.scoring.pyfunc import EnsemblePyfunc

mlflow.models.set_model(EnsemblePyfunc())
