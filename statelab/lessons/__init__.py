"""Lesson back-ends: what the notebooks in ``notebooks/`` call, one module per lesson topic.

``howto`` runs the Dapr how-to page's snippets (``howto_page``) as written and repaired (lesson 00), ``consistency``
measures strong against eventual saves on Redis with replicas (lesson 02), ``etags`` provokes and
resolves first-write-wins conflicts (lessons 03–05), ``sidecar_app`` runs an app under ``statelab run`` and
measures Dapr resiliency policies on a real daprd (lesson 07), and ``exercises`` checks what the learner writes
in lessons 01–06 (one module per kind of exercise). They use the learner library (``statelab.client``,
``statelab.writers``, ``statelab.plots``…) and never the server wing.
"""
