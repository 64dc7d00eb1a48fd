"""CCI-compatible commands (Hitachi Command Control Interface / RAID Manager) for blockemu.

``horcmstart.sh``, ``horcmshutdown.sh``, ``paircreate``, ``pairsplit``,
``pairresync``, ``pairdisplay``, ``pairevtwait`` and ``pairvolchk``, with
CCI's options, output columns and exit codes, driving blockemu's in-array
pairs, so existing ShadowImage scripts run unchanged in a lab. Installed as
one console script, ``blockemu-cci``; see ``cci/README.md``.

Modules: :mod:`~cci.main` (dispatch, install-links), :mod:`~cci.instance`
(the HORCM daemon), :mod:`~cci.commands` (the pair commands),
:mod:`~cci.options` (CCI command lines), :mod:`~cci.groups` (group
resolution), :mod:`~cci.actions` (array calls), :mod:`~cci.states` and
:mod:`~cci.display` (what is shown), :mod:`~cci.exitcodes`, :mod:`~cci.rpc`,
:mod:`~cci.rundir`, :mod:`~cci.model`. Imports ``formats`` and ``blockemu``;
nothing imports it.
"""
