"""The model stage: obtain the reference ONNX, check its signature, open inference sessions."""
