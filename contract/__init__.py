"""What the gateway and the runners share: names, wire types and media codecs.

The floor of the import graph: nothing here imports the gateway, the runners or settings, and
nothing here imports torch, transformers or vLLM, so the gateway can use it and stay light::

    contract.names      the bundled runners' names, the tag -> model name rule
    contract.imaging    image decoding and the preprocessing schema (Pillow, numpy)
    contract.audio      audio decoding, resampling and 30 s windows (soundfile, numpy)
    contract.vision     Prediction, top-k, VisionInfo: what the image runner answers
    contract.speech     Clip, ClipText, SpeechInfo: what the speech runner takes and answers
"""
