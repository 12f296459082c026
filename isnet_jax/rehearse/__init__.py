"""``python -m isnet_jax.rehearse``: a Cloud TPU pod-slice run rehearsed on one machine.

``scenarios``: the hosts (processes of the real command line) and what happens to them
(preemption, a lost host, a bucket outage, another host count); ``gcs_emulator``: the local
Cloud Storage bucket they share. Everything here needs the ``rehearse`` extra
(``pip install -e ".[rehearse]"``) and nothing of it is imported by the rest of the package.
"""
