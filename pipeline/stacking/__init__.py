"""Students of one architecture trained as one stacked model: the engine behind one entry point.

:func:`stack_students` turns a group of students into a :class:`GroupTrainer` (or says why the group
trains one by one), which :func:`pipeline.train.run_epochs` drives in place of its per-student loop.
Nothing outside this package imports its modules:

- ``trainer``: the entry point and the trainer (a stacked epoch, vectorised validation, write-back);
- ``stack``: the stacked model: parameters as rows of one flat tensor, the step, the eval-mode forward;
- ``grouped``: plain sequential students as one wide model of natively grouped layers (else ``vmap``);
- ``optim``: the stacked optimiser step, equal to torch's SGD, Adam, AdamW and RMSprop per student;
- ``cost``: whether a stack pays on a CPU.

The teacher never comes here: it trains through the plain loop of :mod:`pipeline.train`.
"""
from pipeline.stacking.trainer import GroupTrainer, stack_students

__all__ = ["GroupTrainer", "stack_students"]
