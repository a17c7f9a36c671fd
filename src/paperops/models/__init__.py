"""Model families (tfidf, embedding, finetune, lm) and the bundle manifest (`models.base`), the
one place that says which task a bundle is.

May import: uncertainty, data and the foundation modules.
"""
