"""Operations around campaigns: deployments and workers (`deploy`), the machine and config report
(`doctor`), the run history from the Prefect API (`history`), and the console of a CLI run (`console`)."""
