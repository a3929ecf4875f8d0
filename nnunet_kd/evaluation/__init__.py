"""BraTS evaluation: region-wise metrics (:mod:`.metrics`), BraTS 2023 lesion-wise metrics (:mod:`.lesionwise`),
the BraTS 2024 post-treatment glioma lesion-wise procedure (:mod:`.lesionwise_2024`, used for GLI-POST) and
folder evaluation with CSV/JSON outputs (:mod:`.evaluate`, behind ``nnunet-kd evaluate``)."""
