"""Training MuseTalk: preprocessing, reference sampling, the two training stages, SyncNet and evaluation.

Modules, in the order data flows through them:

- ``preprocess``: talking-face videos -> per-clip crops, landmarks, 16 kHz audio, Whisper features, mel spectrograms
  (the clip layout is defined in ``clips``; the mel spectrogram in ``mel``).
- ``sampling``: reference-frame selection (Selective Information Sampling and the ablation strategies).
- ``data``: datasets over preprocessed clips (single frames for stage 1, frame runs for stage 2, SyncNet pairs).
- ``vgg``, ``discriminator``, ``syncnet``, ``losses``: loss networks and loss functions.
- ``config``: the typed YAML configurations; ``loop`` and ``runs``: the shared training loop and its files.
- ``train``, ``train_syncnet``: the trainers (``accelerate`` for one CPU, one GPU or many GPUs and machines).
- ``evaluate``: FID, CSIM, LSE-C/LSE-D, PSNR, SSIM and LMD where their weights are supplied; LSE by the
  published SyncNet protocol is in ``lse_protocol``.

Run ``python -m training.<module> --help`` for the command-line tools; see ``training/README.md``.
"""
