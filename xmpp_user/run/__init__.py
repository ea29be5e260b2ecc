"""A Locust run of XMPP users and its accounting.

- ``options``: the XMPP users' command-line options, and the settings users read from them;
- ``phases``: named phases of a run (a load shape every process follows), phases that wait for the server;
- ``batches``: users in batches of new connections;
- ``truth``: the message truth (who should receive what, what arrived, lost, unexpected, in flight);
- ``deviations``: what differed from the plan, said once;
- ``lag``: how far behind its own schedule the generator's event loop runs;
- ``outcome``: truth and deviations summed over the workers, lost workers, the run's files and exit code.
"""
