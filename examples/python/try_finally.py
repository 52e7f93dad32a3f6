# The reference text's second example: every close in its own `finally` block. The text's
# lines, changed only by the import line, with the underscores its rendering lost put back
# (`my_ceph_conf`, `open_ioctx('my_pool')`, `rbd_inst`, as in Ceph's documentation).
#
# Like the text, it never calls `cluster.connect()`: python-rados would refuse to open the
# pool (RadosStateError), the SDK does not, since the host has already chosen the cluster.
import rados, rbd

cluster = rados.Rados(conffile='my_ceph_conf')
try:
    ioctx = cluster.open_ioctx('my_pool')
    try:
        rbd_inst = rbd.RBD()
        size = 4 * 1024**3 # 4 GiB
        rbd_inst.create(ioctx, 'myimage', size)
        image = rbd.Image(ioctx, 'myimage')
        try:
            data = 'foo' * 200
            image.write(data, 0)
        finally:
            image.close()
    finally:
        ioctx.close()
finally:
    cluster.shutdown()
