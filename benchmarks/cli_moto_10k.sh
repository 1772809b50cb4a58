#!/usr/bin/env bash
# The CLI on a 10k-recipient PostgreSQL campaign into moto's server, drained by 4 consumers
# (moto slows with every message left queued). Prints the summary, peak RSS and the final statuses.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=45123
.venv/bin/python -m moto.server -H 127.0.0.1 -p $PORT > /tmp/moto10k.log 2>&1 &
MOTO=$!
trap 'kill $MOTO 2>/dev/null; kill $DRAIN 2>/dev/null || true' EXIT
sleep 3
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS cli10k WITH (FORCE)" -c "CREATE DATABASE cli10k"
export AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_ENDPOINT_URL_SQS=http://127.0.0.1:$PORT
export CAMPAIGN_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/cli10k DAGSTER_HOME=/tmp/cli10k_home
rm -rf $DAGSTER_HOME
export AWS_SQS_QUEUE_URL=$(.venv/bin/python -c "import boto3;print(boto3.client('sqs').create_queue(QueueName='whatsapp-messages')['QueueUrl'])")
.venv/bin/campaign-pipeline init-db
CID=$(.venv/bin/python -c "
from campaign_pipeline.resources.campaign_store import CampaignStore
s=CampaignStore()
c=s.campaigns.add(organization_id='o', name='10k', status='asset_generated', message_type='text', message_content='Hello {{name}}')
s.campaigns.add_recipients(c, [{'phone_number': f'+1555{i:07d}' if i % 100 else 'bad', 'name': f'N{i}'} for i in range(10000)])
print(c)")
.venv/bin/python - <<'PY' > /tmp/drained.txt &
import boto3, os, threading
c=boto3.client('sqs'); u=os.environ['AWS_SQS_QUEUE_URL']
ids=set(); total=[0]; lock=threading.Lock()
def worker():
    idle=0
    while idle < 30:
        m=c.receive_message(QueueUrl=u, MaxNumberOfMessages=10, WaitTimeSeconds=1).get('Messages', [])
        if not m: idle+=1; continue
        idle=0
        c.delete_message_batch(QueueUrl=u, Entries=[{'Id':str(i),'ReceiptHandle':x['ReceiptHandle']} for i,x in enumerate(m)])
        with lock:
            total[0]+=len(m); ids.update(x['MessageId'] for x in m)
ts=[threading.Thread(target=worker) for _ in range(4)]
[t.start() for t in ts]; [t.join() for t in ts]
print(total[0], len(ids))
PY
DRAIN=$!
/usr/bin/time -v .venv/bin/campaign-pipeline process --max-concurrent-batches 1 $CID 2> /tmp/cli10k.time || true
grep -E "Maximum resident|Elapsed" /tmp/cli10k.time
wait $DRAIN || true
echo "drained (messages, unique ids): $(cat /tmp/drained.txt)"
psql -h 127.0.0.1 -U postgres -d cli10k -tAc "select status, count(*), count(sqs_message_id), count(failure_reason) from campaign_audience group by status"
