"""tl: transfer learning on images from the command line.

The CLI (`tl_cli.cli`) is a thin layer over this library; import the modules directly:
`tl_cli.features.extract.extract`, `tl_cli.inference.predict.Predictor`, `tl_cli.backbones.create_backbone`.
"""

__version__ = "0.1.0"
