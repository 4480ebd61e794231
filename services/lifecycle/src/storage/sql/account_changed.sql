-- PostgreSQL: every change of an account row, whichever replica or tool
-- made it, notifies "tenant account_id version" on cascade_accounts at
-- commit; each lifecycle replica's account cache listens (storage/cache.rs).
-- A deleted (erased) account notifies the largest version, so nothing
-- replaces its tombstone.
CREATE OR REPLACE FUNCTION cascade_account_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('cascade_accounts',
            OLD.tenant_id || ' ' || OLD.account_id || ' 9223372036854775807');
    ELSE
        PERFORM pg_notify('cascade_accounts',
            NEW.tenant_id || ' ' || NEW.account_id || ' ' || NEW.version);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER accounts_changed
    AFTER UPDATE OR DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION cascade_account_changed();
