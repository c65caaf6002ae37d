"""Data stage: HDR -> PNG preparation (:mod:`.prepare`, :mod:`.exr`, :mod:`.tonemap`), synthetic
panoramas (:mod:`.synthetic`), captions (:mod:`.caption`: BLIP / metadata; :mod:`.captions`: the
published Laval captions in ``laval_captions/``), NFoV crops (:mod:`.crop`) and the training
records ``opama train`` reads (:mod:`.train_data`)."""
