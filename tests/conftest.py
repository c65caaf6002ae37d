import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# Tables (eval, doctor) lay out to the terminal width; tests read their cells, so pin a wide terminal whatever
# the caller's $COLUMNS is. Messages never wrap (soft_wrap); tests that check that pass their own COLUMNS.
os.environ["COLUMNS"] = "200"
