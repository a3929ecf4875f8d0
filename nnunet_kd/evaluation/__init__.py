"""BraTS evaluation: region-wise metrics (:mod:`.metrics`), BraTS 2023 lesion-wise metrics (:mod:`.lesionwise`)
and folder evaluation with CSV/JSON outputs (:mod:`.evaluate`, behind ``nnunet-kd evaluate``)."""
