"""Everything of the package that imports torch: the torch engine (session), the ONNX->torch
converter, and the work it does on its device (decode, resize, scoring metrics)."""
