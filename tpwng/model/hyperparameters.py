"""The paper's hyperparameters (Sec. 4.2; supplement 7), each declared once.

`ModelConfig`'s defaults and every default argument of the model's modules are these names;
the config schema's ``model`` defaults equal them (a test holds the two together), since the
model reads nothing of the pipeline's configuration.
"""

from __future__ import annotations

N_CTX = 8  # learnable prompt context tokens
NVP_MODE = "as"  # normality visual prompt: attention over normal snippets (Table 2)
NVP_TEMPERATURE = 0.01  # softmax temperature of the NVP (CLIP's logit scale 100)
ALPHA = 0.2  # weight of the normality guidance in the anomaly evidence (Eq. 5)
THETA = 0.55  # pseudo-label threshold (Eq. 6; UCF-Crime)
LAYERS = 4  # temporal module layers
HEADS = 4  # attention heads
RAMP_R = 256  # R: softness of the span mask ramp (Eq. 7)
SPAN_SCALE = 256  # F: the span scale of Eq. 8 (the training sequence cap)
FF_DIM = 2048  # feed-forward width of a temporal layer
DROPOUT = 0.1  # dropout of a temporal layer
