"""
alligatord: the pre-fork supervisor that runs Alligator workers under systemd.

``alligatord -c alligator.ini`` forks the workers each ``[queue:NAME]`` section asks for,
replaces any that die, reloads the file on SIGHUP and stops gracefully on SIGTERM. This
package imports ``alligator``; the library never imports it.
"""
