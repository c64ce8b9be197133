"""tl: transfer learning on images from the command line.

The CLI (`tl_cli.cli`) is a thin layer over this library; each command is one function:

    tl extract   tl_cli.head.small_data.train_small_data   (features cached, head fitted, run saved)
    tl finetune  tl_cli.finetune.trainer.start / resume     (with a tl_cli.finetune.config.FinetuneConfig)
    tl predict   tl_cli.inference.predict.load_predictor(...).predict(paths)
    tl evaluate  tl_cli.inference.evaluate.evaluate
    tl export    tl_cli.inference.export.export_run
    tl check     tl_cli.check.run.check_dataset
    tl suggest   tl_cli.suggest.suggest

Below them: `tl_cli.data.scan.scan_dataset` (the dataset and its split),
`tl_cli.features.extract.extract_features` (the feature cache alone) and
`tl_cli.backbones.create_backbone` (a registered network with its weights). Errors are
`tl_cli.errors.TLError` subclasses, each with a one-line message and a hint.
"""

__version__ = "0.1.0"
