"""Data stage: HDR -> PNG preparation (:mod:`.prepare`, :mod:`.exr`, :mod:`.tonemap`), synthetic
panoramas (:mod:`.synthetic`), captions (:mod:`.caption`: the job and ``run_caption``;
:mod:`.blip`: BLIP / BLIP-2; :mod:`.scene_captions`: captions from synthetic scenes;
:mod:`.caption_store`: the JSONL file; :mod:`.captions`: reading captions, and the published
Laval captions in ``laval_captions/``), NFoV crops (:mod:`.crop`) and the training records
``opama train`` reads (:mod:`.train_data`). What is done is decided by :mod:`opama_tools.jobs`."""
