"""Using a trained run: rebuilding it (`load`), predicting, evaluating with a report, exporting to
ONNX/TorchScript. Imports everything below finetune."""
