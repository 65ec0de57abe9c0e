"""Evaluation scripts and their parts: ``python -m eval.trec_dl`` (TREC DL re-ranking of given
first-stage runs) and ``python -m eval.msmarco`` (MS MARCO passage dev: first stage + re-ranking),
metrics through ir-measures (:mod:`eval.metrics`), timing and energy per stage
(:mod:`eval.pipeline`), and the Markdown + PNG report (:mod:`eval.report`).

Nothing is imported here: each script imports what it needs when it runs.
"""

__all__: list[str] = []
