"""`fit`: the two-phase training of a plan, and the private machinery it runs on.

    trainer.py        fit(recipe) -> RunResult: the plan's phases in order, then the best model
    phases.py         one phase: training model, optimizer, loss, resumable Keras fit
    freezing.py       which backbone layers train, in which mode, in each phase
    feature_cache.py  the frozen layers' output computed once per image view
    checkpointing.py  what a run keeps so that any kill costs at most the current epoch
    augment.py        the recipe's augmentation as Keras layers inside the train step
    distribution.py   tf.distribute strategies; multi_worker.py, Keras under several workers
"""

from retail_vision.training.trainer import RunResult, fit

__all__ = ["RunResult", "fit"]
