"""``opama train`` as a library function: :func:`~opama_tools.train.run.run_train`."""

from .run import TrainInputError, TrainSummary, run_train

__all__ = ["TrainInputError", "TrainSummary", "run_train"]
