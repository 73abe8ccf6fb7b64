"""Models for the serving bundle: demo generators, Hub importers and the store reader.

Read models only through ``models.store.resolve(tag)``; create them with ``python -m models``.
"""
