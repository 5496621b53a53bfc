"""A pretrained speech encoder under every head: weights, network, export, run time.

- :mod:`.ctranslate2_file` reads the published weights (a CTranslate2 ``model.bin``);
- :mod:`.whisper_encoder` is Whisper's encoder in Keras, the reference;
- :mod:`.export` converts the encoder to LiteRT (build time);
- :mod:`.runtime` gives the pooled hidden states of speech segments at run time.

The backbone folder's format, read without TensorFlow, is
:mod:`annotate.modelling.backbone_folder`, beside the model folder's.
"""
