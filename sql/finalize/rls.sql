-- Row-level security: roles that are neither superusers nor the owner see
-- their tenant's rows only, also through direct SELECTs. (The functions run
-- as the owner and filter by tenant themselves, once per call rather than
-- once per row, for every role.)
ALTER TABLE allsource.streams ENABLE ROW LEVEL SECURITY;
ALTER TABLE allsource.events ENABLE ROW LEVEL SECURITY;
ALTER TABLE allsource.snapshots ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON allsource.streams USING (allsource._in_tenant(tenant_id));
CREATE POLICY tenant_rows ON allsource.events USING (allsource._in_tenant(tenant_id));
CREATE POLICY tenant_rows ON allsource.snapshots USING (allsource._in_tenant(tenant_id));
