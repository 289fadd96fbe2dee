#!/bin/bash
# Start a one-node SLURM cluster on this machine (as root), for the tests of slurm/.
# Needs Debian's slurm-wlm and munge (`apt-get install slurm-wlm munge`). Idempotent: does nothing
# if the cluster already answers. Not for production: root runs everything, no accounting.
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "local-cluster: must run as root" >&2; exit 1; }
command -v slurmctld >/dev/null || { echo "local-cluster: slurm-wlm is not installed" >&2; exit 1; }

HOST=$(hostname -s)
CPUS=$(nproc)
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged

cat > /tmp/fedmoap-slurm.conf <<CONF
ClusterName=fedmoap-test
SlurmctldHost=$HOST
AuthType=auth/munge
# requeued jobs wait cred_expire seconds before they may start again (default 120)
AuthInfo=cred_expire=10
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SlurmUser=root
SlurmdUser=root
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
SchedulerType=sched/backfill
MinJobAge=300
NodeName=$HOST CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
if ! cmp -s /tmp/fedmoap-slurm.conf /etc/slurm/slurm.conf; then
  mv /tmp/fedmoap-slurm.conf /etc/slurm/slurm.conf
  pkill -x slurmctld || true; pkill -x slurmd || true
  for _ in $(seq 30); do pgrep -x 'slurmctld|slurmd' >/dev/null || break; sleep 1; done
fi

pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 60); do
  if sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mixed|alloc'; then exit 0; fi
  scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
  sleep 1
done
echo "local-cluster: the node did not come up; see /var/log/slurm/" >&2
exit 1
