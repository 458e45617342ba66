-- Extra databases on the stack's PostgreSQL: Prefect's and Label Studio's (dlvm's own is POSTGRES_DB).
CREATE DATABASE prefect;
CREATE DATABASE labelstudio;
