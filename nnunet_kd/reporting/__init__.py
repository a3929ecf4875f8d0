"""Reports over several evaluated runs: comparison tables (:mod:`.table`) and PNG figures (:mod:`.plots`),
behind ``nnunet-kd report``."""
