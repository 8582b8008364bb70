"""Lesson back-ends: what the notebooks in ``notebooks/`` call, one module per lesson topic.

``howto`` runs the Dapr how-to page's snippets as written and repaired (lessons 00–01), ``consistency``
measures strong against eventual saves on Redis with replicas (lesson 02), ``etags`` provokes and
resolves first-write-wins conflicts (lessons 03–05), ``sidecar_app`` runs an app under ``statelab run`` and
measures Dapr resiliency policies on a real daprd (lesson 07). They use the learner library (``statelab.client``,
``statelab.writers``, ``statelab.plots``…) and never the server wing.
"""
