"""Offline knowledge distillation: run the teacher once, distill many students from stored logits.

The library never imports Prefect; orchestration lives in ``flows/``.
"""
__version__ = "0.1.0"
