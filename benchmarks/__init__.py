"""The benchmarks: tools beside the library that time it and measure its memory on this machine.

    python -m benchmarks bench [--quick] [--decoders] [--out FILE.json] [--set ...]       (make bench)
    python -m benchmarks rehearsal [--images N] [--steps N] [--work DIR] [--out FILE.json]  (make rehearsal)

They use the library only through its public modules; nothing in ``captioning`` imports them.
"""
