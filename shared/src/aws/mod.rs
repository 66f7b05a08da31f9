//! The AWS adapters: DynamoDB, SQS and the Lambda handlers. (Being written.)
