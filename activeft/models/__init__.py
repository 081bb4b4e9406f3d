"""Models and their inputs: timm backbones and their preprocessing, image decoding, the heads trained on
embeddings, the finetuned classifier, the self-supervised encoder of the demo, and LogME."""
