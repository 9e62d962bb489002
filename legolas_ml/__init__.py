"""LEGOLAS ML core: framework-free training, evaluation and explanation of text classifiers."""
