"""Evaluation stage: ``opama eval`` as library functions (:mod:`.run`: ``run_eval``, ``run_compare``),
the scorer (:mod:`.evaluate`), the metric declarations (:mod:`.registry`), the weight-free and
pretrained metrics (:mod:`.metrics`), the paired comparison (:mod:`.paired`), the input-only
baseline (:mod:`.baselines`) and the HTML / Markdown reports (:mod:`.report`)."""
