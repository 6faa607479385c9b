-- Schema version 1: the database gatekeeper 0.1.0 creates, made by its own code
-- and written by tests/schemas/dump_schema.py. tests/test_schema.py builds the old database from it.
--
-- PostgreSQL database dump
--


-- Dumped from database version 15.20 (Debian 15.20-0+deb12u1)
-- Dumped by pg_dump version 15.20 (Debian 15.20-0+deb12u1)


--
-- Name: audit_log_append_only(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.audit_log_append_only() RETURNS trigger
    LANGUAGE plpgsql
    AS $$ BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$;




--
-- Name: audit_log; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.audit_log (
    id integer NOT NULL,
    at timestamp without time zone NOT NULL,
    "user" character varying(255) NOT NULL,
    action character varying(255) NOT NULL,
    subject character varying(255) NOT NULL,
    reason text NOT NULL,
    detail text NOT NULL
);


--
-- Name: audit_log_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.audit_log_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: audit_log_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.audit_log_id_seq OWNED BY public.audit_log.id;


--
-- Name: auths; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.auths (
    id integer NOT NULL,
    auth_number character varying(255) NOT NULL,
    payer_id character varying(255) NOT NULL,
    patient_id character varying(64) NOT NULL,
    cpt_codes character varying(255) NOT NULL,
    facility_npi character varying(10) NOT NULL,
    ordering_npi character varying(10) NOT NULL,
    valid_from date NOT NULL,
    valid_to date NOT NULL,
    units integer NOT NULL,
    units_used integer NOT NULL,
    laterality character varying(1),
    body_part character varying(255) NOT NULL,
    status character varying(16) NOT NULL,
    imported_at timestamp without time zone NOT NULL,
    updated_at timestamp without time zone NOT NULL
);


--
-- Name: auths_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.auths_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: auths_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.auths_id_seq OWNED BY public.auths.id;


--
-- Name: findings; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.findings (
    id integer NOT NULL,
    study_instance_uid character varying(64) NOT NULL,
    sop_instance_uid character varying(64) NOT NULL,
    code character varying(32) NOT NULL,
    instance_value character varying(255) NOT NULL,
    order_value character varying(255) NOT NULL,
    message text NOT NULL,
    holds boolean NOT NULL,
    found_at timestamp without time zone NOT NULL
);


--
-- Name: findings_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.findings_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: findings_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.findings_id_seq OWNED BY public.findings.id;


--
-- Name: instances; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.instances (
    id integer NOT NULL,
    sop_instance_uid character varying(64) NOT NULL,
    study_instance_uid character varying(64) NOT NULL,
    series_instance_uid character varying(64) NOT NULL,
    sop_class_uid character varying(64) NOT NULL,
    transfer_syntax_uid character varying(64) NOT NULL,
    path character varying(400) NOT NULL,
    size bigint NOT NULL,
    sha256 character varying(64) NOT NULL,
    received_from character varying(16) NOT NULL,
    received_at timestamp without time zone NOT NULL
);


--
-- Name: instances_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.instances_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: instances_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.instances_id_seq OWNED BY public.instances.id;


--
-- Name: mpps; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.mpps (
    id integer NOT NULL,
    sop_instance_uid character varying(64) NOT NULL,
    accession_number character varying(16),
    status character varying(16) NOT NULL,
    calling_ae character varying(255) NOT NULL,
    performed_series text NOT NULL,
    discontinuation_reason character varying(255) NOT NULL,
    created_at timestamp without time zone NOT NULL,
    updated_at timestamp without time zone NOT NULL
);


--
-- Name: mpps_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.mpps_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: mpps_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.mpps_id_seq OWNED BY public.mpps.id;


--
-- Name: orders; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.orders (
    id integer NOT NULL,
    accession_number character varying(16) NOT NULL,
    status character varying(16) NOT NULL,
    patient_id character varying(64) NOT NULL,
    patient_issuer character varying(255) NOT NULL,
    patient_name character varying(255) NOT NULL,
    birth_date date NOT NULL,
    sex character varying(1) NOT NULL,
    cpt character varying(5) NOT NULL,
    description character varying(255) NOT NULL,
    modality character varying(16) NOT NULL,
    body_part character varying(255) NOT NULL,
    laterality character varying(1),
    scheduled_start timestamp without time zone NOT NULL,
    station_ae character varying(16) NOT NULL,
    station_name character varying(255) NOT NULL,
    location character varying(255) NOT NULL,
    ordering_npi character varying(10) NOT NULL,
    ordering_name character varying(255) NOT NULL,
    facility_npi character varying(10) NOT NULL,
    payer_id character varying(255) NOT NULL,
    member_id character varying(255) NOT NULL,
    plan_type character varying(255) NOT NULL,
    diagnoses text NOT NULL,
    study_instance_uid character varying(64) NOT NULL,
    requested_procedure_id character varying(16) NOT NULL,
    scheduled_procedure_step_id character varying(16) NOT NULL,
    auth_unit_used character varying(255),
    last_decision character varying(8),
    last_reasons character varying(255) NOT NULL,
    imported_at timestamp without time zone NOT NULL,
    updated_at timestamp without time zone NOT NULL
);


--
-- Name: orders_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.orders_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: orders_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.orders_id_seq OWNED BY public.orders.id;


--
-- Name: overrides; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.overrides (
    id integer NOT NULL,
    accession_number character varying(16) NOT NULL,
    "user" character varying(255) NOT NULL,
    reason text NOT NULL,
    at timestamp without time zone NOT NULL
);


--
-- Name: overrides_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.overrides_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: overrides_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.overrides_id_seq OWNED BY public.overrides.id;


--
-- Name: studies; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.studies (
    id integer NOT NULL,
    study_instance_uid character varying(64) NOT NULL,
    state character varying(8) NOT NULL,
    accession_number character varying(16) NOT NULL,
    order_accession character varying(16) NOT NULL,
    patient_id character varying(64) NOT NULL,
    study_date character varying(8) NOT NULL,
    first_received_at timestamp without time zone NOT NULL,
    last_received_at timestamp without time zone NOT NULL,
    held_at timestamp without time zone,
    state_changed_at timestamp without time zone NOT NULL,
    age_flagged_at timestamp without time zone,
    instance_count integer NOT NULL,
    pending_files character varying(8)
);


--
-- Name: studies_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.studies_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: studies_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.studies_id_seq OWNED BY public.studies.id;


--
-- Name: audit_log id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.audit_log ALTER COLUMN id SET DEFAULT nextval('public.audit_log_id_seq'::regclass);


--
-- Name: auths id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.auths ALTER COLUMN id SET DEFAULT nextval('public.auths_id_seq'::regclass);


--
-- Name: findings id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.findings ALTER COLUMN id SET DEFAULT nextval('public.findings_id_seq'::regclass);


--
-- Name: instances id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.instances ALTER COLUMN id SET DEFAULT nextval('public.instances_id_seq'::regclass);


--
-- Name: mpps id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.mpps ALTER COLUMN id SET DEFAULT nextval('public.mpps_id_seq'::regclass);


--
-- Name: orders id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.orders ALTER COLUMN id SET DEFAULT nextval('public.orders_id_seq'::regclass);


--
-- Name: overrides id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.overrides ALTER COLUMN id SET DEFAULT nextval('public.overrides_id_seq'::regclass);


--
-- Name: studies id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.studies ALTER COLUMN id SET DEFAULT nextval('public.studies_id_seq'::regclass);


--
-- Name: audit_log audit_log_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.audit_log
    ADD CONSTRAINT audit_log_pkey PRIMARY KEY (id);


--
-- Name: auths auths_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.auths
    ADD CONSTRAINT auths_pkey PRIMARY KEY (id);


--
-- Name: findings findings_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.findings
    ADD CONSTRAINT findings_pkey PRIMARY KEY (id);


--
-- Name: instances instances_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.instances
    ADD CONSTRAINT instances_pkey PRIMARY KEY (id);


--
-- Name: mpps mpps_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.mpps
    ADD CONSTRAINT mpps_pkey PRIMARY KEY (id);


--
-- Name: orders orders_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.orders
    ADD CONSTRAINT orders_pkey PRIMARY KEY (id);


--
-- Name: overrides overrides_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.overrides
    ADD CONSTRAINT overrides_pkey PRIMARY KEY (id);


--
-- Name: studies studies_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.studies
    ADD CONSTRAINT studies_pkey PRIMARY KEY (id);


--
-- Name: audit_log_action; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX audit_log_action ON public.audit_log USING btree (action);


--
-- Name: audit_log_at; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX audit_log_at ON public.audit_log USING btree (at);


--
-- Name: audit_log_subject; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX audit_log_subject ON public.audit_log USING btree (subject);


--
-- Name: auths_auth_number; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX auths_auth_number ON public.auths USING btree (auth_number);


--
-- Name: auths_patient_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX auths_patient_id ON public.auths USING btree (patient_id);


--
-- Name: auths_valid_to; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX auths_valid_to ON public.auths USING btree (valid_to);


--
-- Name: findings_code; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX findings_code ON public.findings USING btree (code);


--
-- Name: findings_sop_instance_uid; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX findings_sop_instance_uid ON public.findings USING btree (sop_instance_uid);


--
-- Name: findings_study_instance_uid; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX findings_study_instance_uid ON public.findings USING btree (study_instance_uid);


--
-- Name: instances_series_instance_uid; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX instances_series_instance_uid ON public.instances USING btree (series_instance_uid);


--
-- Name: instances_sop_instance_uid; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX instances_sop_instance_uid ON public.instances USING btree (sop_instance_uid);


--
-- Name: instances_study_instance_uid; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX instances_study_instance_uid ON public.instances USING btree (study_instance_uid);


--
-- Name: mpps_accession_number; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX mpps_accession_number ON public.mpps USING btree (accession_number);


--
-- Name: mpps_sop_instance_uid; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX mpps_sop_instance_uid ON public.mpps USING btree (sop_instance_uid);


--
-- Name: orders_accession_number; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX orders_accession_number ON public.orders USING btree (accession_number);


--
-- Name: orders_modality_scheduled_start; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX orders_modality_scheduled_start ON public.orders USING btree (modality, scheduled_start);


--
-- Name: orders_patient_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX orders_patient_id ON public.orders USING btree (patient_id);


--
-- Name: orders_payer_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX orders_payer_id ON public.orders USING btree (payer_id);


--
-- Name: orders_requested_procedure_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX orders_requested_procedure_id ON public.orders USING btree (requested_procedure_id);


--
-- Name: orders_scheduled_start; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX orders_scheduled_start ON public.orders USING btree (scheduled_start);


--
-- Name: orders_station_ae_scheduled_start; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX orders_station_ae_scheduled_start ON public.orders USING btree (station_ae, scheduled_start);


--
-- Name: orders_status; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX orders_status ON public.orders USING btree (status);


--
-- Name: orders_study_instance_uid; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX orders_study_instance_uid ON public.orders USING btree (study_instance_uid);


--
-- Name: overrides_accession_number; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX overrides_accession_number ON public.overrides USING btree (accession_number);


--
-- Name: studies_accession_number; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX studies_accession_number ON public.studies USING btree (accession_number);


--
-- Name: studies_first_received_at; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX studies_first_received_at ON public.studies USING btree (first_received_at);


--
-- Name: studies_order_accession; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX studies_order_accession ON public.studies USING btree (order_accession);


--
-- Name: studies_state; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX studies_state ON public.studies USING btree (state);


--
-- Name: studies_study_instance_uid; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX studies_study_instance_uid ON public.studies USING btree (study_instance_uid);


--
-- Name: audit_log audit_log_append_only; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER audit_log_append_only BEFORE DELETE OR UPDATE ON public.audit_log FOR EACH ROW EXECUTE FUNCTION public.audit_log_append_only();


--
-- PostgreSQL database dump complete
--


