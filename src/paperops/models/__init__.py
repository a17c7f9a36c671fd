"""Model families (tfidf, hybrid, embedding, finetune, lm), the bundle manifest (`models.base`),
the one place that says which task a bundle is, and ONNX text graphs (`models.onnx_text`) that
families and serving both run.

May import: uncertainty, data and the foundation modules.
"""
