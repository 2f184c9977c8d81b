"""The HDF5 artifacts: one table of their layouts, atomic writes and checked reads, and their conversion to gps_core's objects.

    layouts.py      the table: per kind of file, each dataset's axes, dtype and meaning (docs/artifacts.md's
                    tables are written from it by doc_tables.py; `gps inspect` shows it)
    io.py           atomic writes and the one reader (schema version, the datasets asked for)
    checks.py       the checks every reader shares, and the files of plain arrays (samples, step, C-step stats)
    controllers.py  K, k, pol_covar <-> gps_core.traj_opt.lingauss        models.py     dynamics, cost models <-> gps_core.traj_opt.lqr
    priors.py       GMM priors <-> gps_core.fit.gmm                  policy.py     the network <-> gps_core.policy.policy_net
    optimiser.py    Adam state <-> gps_core.policy.s_step (torch)       duals.py      BADMM duals <-> gps_core.badmm.algorithm

One module per kind of gps_core object, so that a stage depends only on the algorithm code of the files it reads.
"""
