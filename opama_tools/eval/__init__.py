"""Evaluation stage: ``opama eval`` (:mod:`.evaluate`), the weight-free and pretrained metrics
(:mod:`.metrics`), the input-only baseline (:mod:`.baselines`) and the HTML / Markdown reports
(:mod:`.report`)."""
