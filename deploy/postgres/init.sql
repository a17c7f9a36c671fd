-- First start of the compose PostgreSQL (docker-entrypoint-initdb.d): the database POSTGRES_DB
-- (paperops: the request log shared by every API replica and the drift job) exists already;
-- MLflow's backend store and the Optuna studies get their own databases, owned by the same user.
CREATE DATABASE mlflow OWNER paperops;
CREATE DATABASE optuna OWNER paperops;
