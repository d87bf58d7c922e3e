"""TPWNG itself, as the paper describes it: prompt learning, the normality visual prompt, pseudo-
label generation, TCSAL, classifier and losses. It imports nothing of the pipeline.
"""
