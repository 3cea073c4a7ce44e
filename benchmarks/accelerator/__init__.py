"""The device benchmark: one accelerator machine, no Ray, every figure in one JSON.

`python -m benchmarks.accelerator --model M.onnx --src PPM_DIR --out OUT` (`make bench-device`)
measures, in this order and within a time budget:

1. `reference`: onnxruntime fp32 on the CPU over the real images: the outputs and metrics every
   other configuration is compared with;
2. `model_only`: for each engine x precision x batch size, images/s and per-batch latency p50/p99
   on the real images' network inputs held in memory, the device memory peak, and the GPU's
   utilisation while it ran (NVML, sampled every 50 ms); the best batch of each;
3. `metric_deltas`: each engine x precision's dataset-level metrics on the same images, minus the
   reference's, and the largest per-pixel output difference;
4. `feed`: how fast the node's CPUs alone decode and preprocess the original photos (threads of
   one process, 1..all cores, and as many processes as cores): the bound end to end can reach;
5. `end_to_end`: real jobs (`run_job`, `--backend inline`, all cores decoding) from prepared
   inputs and from original JPEGs, with the stage breakdown of their summary;
6. `decoding`: matting only (no ground truth, source-size PNG alphas) from the original JPEGs
   with the torch engine, `--decoding cpu` (every core decodes) against `--decoding device`
   (the device's JPEG decoder), alternated over rounds with medians and their ratio, each run's
   fallback counts, device memory peak and utilisation; then a scored job of the real images
   both ways and the metric deltas of device decoding (approximate by design). The CPU runs
   decode as an unscored job does by default (reduced where the protocol allows);
   `--decoding-cpu-reduce off` makes them decode at full size, as the device does.

It runs on the CPU too (tests, with the tiny model, in seconds); on a GPU machine `--device cuda`.
"""
