"""Subcommands of the ``nnunet-kd`` CLI, one module each.

Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; heavy imports
(torch, nnU-Net) happen inside ``run`` so that ``nnunet-kd --help`` stays fast. Register a new subcommand by
adding its module name to :data:`COMMAND_MODULES` (listed in workflow order).
"""

COMMAND_MODULES: tuple[str, ...] = (
    "demo",
    "synth",
    "convert_brats",
    "select_modalities",
    "export_brats",
    "ext_path",
    "export_teacher",
    "set_teacher",
    "export_subset",
    "check_inputs",
    "evaluate_subsets",
    "pseudolabel",
    "make_distill_dataset",
    "predict",
    "evaluate",
    "report",
)
