"""Beyond one process: prediction over a Dask cluster, data-parallel training over MPI/NCCL.

``cunet.scale.dask_predict``: overlap-tile prediction of images larger than memory, chunk
by chunk on a ``dask.distributed`` cluster, equal bit for bit to ``cunet.predict``.
``cunet.scale.data_parallel``: ``mpiexec -n R python -m cunet.train``: each rank draws
its share of the run's sample stream and the gradients are averaged by one allreduce per
step (MPI on cpu, NCCL on GPUs). Both need the ``dist`` extra (``pip install -e '.[dist]'``).
"""
